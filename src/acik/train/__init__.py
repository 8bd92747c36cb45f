"""Training: the loop (`acik.train.loop.train`), pretraining from recipes (`acik train`), checkpoints,
distributed wrappers, reports and Kubernetes manifests."""
