"""Applications that use Skald from the outside (each one separate from Skald's code)."""
