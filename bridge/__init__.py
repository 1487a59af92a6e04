"""The bridge: Celery events in, Socket.IO updates out; cancel requests in, revokes out."""
