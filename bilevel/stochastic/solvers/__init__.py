"""The stochastic bilevel solvers, one module per paper (see each module's docstring for its update).

:data:`SOLVERS` maps a solver's name to its class (a frozen dataclass of hyperparameters with
``init(problem, inner0, outer0, key)`` and ``step(problem, state)``).
"""

from bilevel.stochastic.solvers.amigo import AmIGO
from bilevel.stochastic.solvers.base import SolverState, StochasticSolver, schedule
from bilevel.stochastic.solvers.bome import BOME
from bilevel.stochastic.solvers.f2sa import F2SA
from bilevel.stochastic.solvers.fsla import FSLA
from bilevel.stochastic.solvers.full_batch import ImplicitGD, UnrolledGD
from bilevel.stochastic.solvers.mrbo import MRBO, VRBO
from bilevel.stochastic.solvers.soba import SABA, SOBA
from bilevel.stochastic.solvers.stocbio import StocBiO
from bilevel.stochastic.solvers.ttsa import TTSA

__all__ = [
    "SOLVERS",
    "SolverState",
    "StochasticSolver",
    "schedule",
    "StocBiO",
    "AmIGO",
    "SOBA",
    "SABA",
    "MRBO",
    "VRBO",
    "TTSA",
    "F2SA",
    "BOME",
    "FSLA",
    "ImplicitGD",
    "UnrolledGD",
]

SOLVERS = {cls.__name__: cls for cls in (StocBiO, AmIGO, SOBA, SABA, MRBO, VRBO, TTSA, F2SA, BOME, FSLA,
                                         ImplicitGD, UnrolledGD)}
