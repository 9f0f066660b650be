"""Training, evaluation and export of HematoVision models (not needed to serve them)."""
