"""lesionforge: synthetic labelled training pairs (image + mask) from diffusion models for medical segmentation."""

__version__ = "0.1.0"
