"""petseg: train, evaluate and serve pet-vs-background segmentation models on Oxford-IIIT Pet."""

__version__ = "0.1.0"
