"""The grader: runs students' autoencoder/VAE notebooks, measures their models, writes feedback."""

__version__ = "0.1.0"
