"""Dataset preparation: synthetic videos, UCF-101 and HMDB-51 frames, client partitions."""
