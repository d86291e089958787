"""IOC shared platform: event contracts and the Kafka, PostgreSQL, auth, metrics and config plumbing.

Nothing in this package connects to anything at import time; every service builds what it needs from a
settings object inside its app factory's lifespan.
"""
