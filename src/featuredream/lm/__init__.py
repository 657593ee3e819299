"""The language model layer: loading models, sites and hook points, SAEs, the offline corpus and SAE training."""
