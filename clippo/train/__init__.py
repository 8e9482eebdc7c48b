"""The training room: `config` (typed sections, TOML, presets), `loop` (the `Trainer`), `step`
(model + loss as one module), `precision`, `state` (checkpoints), `data`, `log`, `loss`, `optim`,
`schedule` and `distributed`.

    from clippo.train import load_train_config, train
    result = train(load_train_config("demo"), hooks=[my_eval])
"""

from clippo.train.config import ConfigError, TrainConfig, load_train_config
from clippo.train.loop import NonFiniteLossError, Trainer, TrainResult, build_model, train

__all__ = [
    "ConfigError",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_model",
    "load_train_config",
    "train",
]
