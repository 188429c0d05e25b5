"""schedbus: an asynchronous priority job scheduler (import package ``scheduler``)."""
