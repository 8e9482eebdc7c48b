"""clippo.render: text -> pixels. Never imports torch at module import time."""
