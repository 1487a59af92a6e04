"""Caption jobs, captioners, the event vocabulary and the database models."""
