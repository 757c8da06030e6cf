"""PrimeDepth: frozen Stable Diffusion preimage -> refiner -> pixel-space depth (Zavadski et al. 2024)."""
from .model import PrimeDepth

__all__ = ["PrimeDepth", "convert_official", "ensemble_with"]


def __getattr__(name):  # lazy: conversion and ensembling pull in extra helpers
    if name == "convert_official":
        from .convert import convert_official

        return convert_official
    if name == "ensemble_with":
        from .ensemble import ensemble_with

        return ensemble_with
    raise AttributeError(name)
