"""flask_modelguard: protect machine-learning prediction APIs against model stealing.

The names below are the public API. Everything else (the event worker, the
quota enforcer, the detectors...) is importable from its own module but may
change without notice.
"""

from .config import Settings
from .exc import (
    AccountBlocked,
    AccountSuspended,
    AlreadyExists,
    AnswerWithheld,
    BadRequest,
    CostExceedsLimit,
    DatabaseUnavailable,
    ExpiredKey,
    InvalidKey,
    InvalidValue,
    MalformedKey,
    MissingKey,
    ModelGuardError,
    NotFound,
    PayloadTooLarge,
    Problem,
    RateLimitExceeded,
    RevokedKey,
    StorageUnavailable,
)
from .extension import ModelGuard, RouteOptions, problem_response, protect
from .payload import PayloadAdapter, Reading
from .signals import account_blocked, account_flagged, quota_exceeded
from .transforms import (
    Answer,
    GaussianNoise,
    HighConfidence,
    LabelOnly,
    LaplaceNoise,
    Misinformation,
    ProbabilityMark,
    RandomPoison,
    Renormalise,
    ReverseSigmoid,
    Round,
    TopK,
    Transform,
    Watermark,
)

#: Not in ``__all__`` (no private-looking names there), but public: ``flask_modelguard.__version__``.
__version__ = "0.1.0"

__all__ = [
    # the extension
    "ModelGuard",
    "RouteOptions",
    "Settings",
    "problem_response",
    "protect",
    # errors
    "AccountBlocked",
    "AccountSuspended",
    "AnswerWithheld",
    "BadRequest",
    "CostExceedsLimit",
    "DatabaseUnavailable",
    "ExpiredKey",
    "InvalidKey",
    "InvalidValue",
    "MalformedKey",
    "MissingKey",
    "ModelGuardError",
    "NotFound",
    "AlreadyExists",
    "PayloadTooLarge",
    "Problem",
    "RateLimitExceeded",
    "RevokedKey",
    "StorageUnavailable",
    # signals
    "account_blocked",
    "account_flagged",
    "quota_exceeded",
    # output protection
    "Answer",
    "GaussianNoise",
    "HighConfidence",
    "LabelOnly",
    "LaplaceNoise",
    "Misinformation",
    "PayloadAdapter",
    "ProbabilityMark",
    "RandomPoison",
    "Reading",
    "Renormalise",
    "ReverseSigmoid",
    "Round",
    "TopK",
    "Transform",
    "Watermark",
]
