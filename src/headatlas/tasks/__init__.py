"""Seeded synthetic prompt generators. Each returns token ids plus the metadata a score needs."""
