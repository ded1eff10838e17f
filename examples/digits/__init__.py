r"""`python -m examples.digits`: the library end to end on real data, on a laptop CPU.

Trains a small eps-prediction network on scikit-learn's 8x8 handwritten digits (or a 2-D toy
set), estimates Analytic-DPM's score moment Gamma, and reports the held-out negative ELBO in
bits/dim of DDPM (beta and beta-tilde), DDIM, Analytic-DPM, Analytic-DDIM and the optimal
trajectory at K = 10, 25, 50, 100, 200 and N steps, plus the PF-ODE likelihood; writes
`results.json`, `table.md`, `nll_vs_steps.png`, `samples.png`, `training_loss.png` and
`report.md` to `runs/<name>/`. Run it from the repository root (`make demo` does);
`python -m examples.digits --help` lists the options.

An application, not part of the library: it uses only the public API (`import scoredyn as sd`)
and needs the `demo` extra (scikit-learn, matplotlib, tqdm).
"""

from .main import main as main
