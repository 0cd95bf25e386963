"""The built-in callbacks, installed as `fitorch.callbacks`.

Each one is written against the public `fitorch` API only, exactly as a user's callback would be.
"""

from fitorch.callbacks.history import History
from fitorch.callbacks.lambda_callback import LambdaCallback
from fitorch.callbacks.progress import ProgressBar

__all__ = ["History", "LambdaCallback", "ProgressBar"]
