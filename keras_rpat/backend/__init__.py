"""Backend dispatch: the only place that knows which Keras backend is active."""
