"""zoomshot.extract: images -> embeddings in a zs-cache (batching, one decode for several encoders, sharding, resume)."""
