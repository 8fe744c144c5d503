"""agerange: predict a person's age range from a face photo."""

__version__ = "0.1.0"
