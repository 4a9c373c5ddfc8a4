"""Inner problems shipped with the core: plain losses ``loss(params, reg, X, y, weights=None)``.

Each loss is a mean over examples (optionally weighted) plus ``0.5 * sum(reg * w**2)``, with ``reg``
a scalar or a per-feature array (a differentiable hyperparameter); intercepts are not penalized.
Note: the softmax models (multiclass logistic, MLP) are invariant to a common shift of the output
biases, so their Hessian is singular along that direction; give the adjoint solver a small
damping (``Implicit(linear_solver=CG(ridge=1e-6))``), use CG (which works on the consistent singular system), or penalize the biases.
"""

from bilevel.problems.adaline import (
    adaline_accuracy,
    adaline_closed_form,
    adaline_decision_function,
    adaline_error,
    adaline_init_params,
    adaline_loss,
    adaline_optimality,
    adaline_predict,
)
from bilevel.problems.logistic import (
    logistic_accuracy,
    logistic_decision_function,
    logistic_error,
    logistic_init_params,
    logistic_loss,
    logistic_optimality,
    logistic_predict,
    logistic_predict_proba,
    multiclass_accuracy,
    multiclass_decision_function,
    multiclass_error,
    multiclass_init_params,
    multiclass_logistic_loss,
    multiclass_logistic_optimality,
    multiclass_predict,
    multiclass_predict_proba,
)
from bilevel.problems.mlp import (
    MLP,
    mlp_accuracy,
    mlp_apply,
    mlp_error,
    mlp_init,
    mlp_loss,
    mlp_optimality,
    mlp_predict,
    mlp_predict_proba,
)
from bilevel.problems.ridge import (
    ridge_closed_form,
    ridge_init_params,
    ridge_loss,
    ridge_mse,
    ridge_optimality,
    ridge_predict,
)
from bilevel.problems.svm import (
    SVMDualSolution,
    hinge_loss,
    smooth_hinge,
    svm_decision,
    svm_dual_fit,
    svm_dual_fit_blocks,
    svm_gram_block,
    svm_primal_loss,
)
