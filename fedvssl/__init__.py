"""FedVSSL: federated self-supervised video learning on Flower, driven by Hydra."""
