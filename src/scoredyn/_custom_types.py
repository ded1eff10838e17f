"""Type aliases shared across scoredyn (jaxtyping)."""

from collections.abc import Callable
from typing import TypeAlias

from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

Scalar: TypeAlias = Float[Array, ""]
ScalarLike: TypeAlias = Real[ArrayLike, ""] | float
Time: TypeAlias = ScalarLike
Key: TypeAlias = PRNGKeyArray
# Any callable (t, x) -> array shaped like x: a score, eps-, x0- or v-prediction.
VectorField: TypeAlias = Callable[[Scalar, Float[Array, "*shape"]], Float[Array, "*shape"]]
ScoreFn: TypeAlias = VectorField
EpsFn: TypeAlias = VectorField
