"""HematoVision: white blood cell classification from microscope images."""

__version__ = "0.1.0"
