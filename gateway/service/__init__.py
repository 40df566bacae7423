"""Use cases: unit of work, handlers (payments, readings, relay commands), bus scheduler, outbox relay."""
