"""Dataset preparation: synthetic videos, UCF-101, HMDB-51, Kinetics-400 and one's own videos.

Nothing here imports torch or Flower. The modules, in the order data flows through them:

- ``scenes`` / ``synthetic``: the seeded synthetic dataset, written in the raw UCF-101 layout;
- ``download`` / ``archives`` / ``sources``: official files fetched (resumable, checked) or taken
  from local paths, and extracted safely;
- ``splits``: the official split lists of UCF-101 and HMDB-51;
- ``kinetics`` / ``own_videos`` / ``video_files``: Kinetics-400 from its standard download, and
  a folder of one's own unlabelled videos;
- ``frames`` / ``workers`` / ``extraction``: videos decoded into zips of JPEG frames, in worker
  processes, at scale (resumable, disk-checked); ``report``: what a preparation left out;
- ``annotations`` / ``partitions`` / ``plots``: annotation JSON, client partitions, a picture;
- ``preparation``: ``prepare_dataset`` and ``dataset_is_prepared``, which tie it all together.
"""
