"""SpecialSAM Sweeps: should you fine-tune SAM's mask decoder for your task?"""

__version__ = "0.1.0"
