"""Jobs and avatars of the service: the store, the scheduler, webhooks and input limits."""
