"""SeeCoder-VPD: SD UNet conditioned on SeeCoder image-semantic tokens (+ DC/SA) with a VPD depth head."""
from .model import SEECODER_LARGE, SEECODER_TINY, SeeCoderVPD
from .seecoder import SeeCoder

__all__ = ["SeeCoderVPD", "SeeCoder", "SEECODER_LARGE", "SEECODER_TINY"]
