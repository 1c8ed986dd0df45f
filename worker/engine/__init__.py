"""The resident language model: which kernels this host runs fastest (measured, cached), loading the model,
label scoring and reply drafting by continuous batching. Knows nothing of Celery or queues."""
