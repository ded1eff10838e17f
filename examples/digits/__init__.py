r"""`python -m examples.digits`: the library end to end on real data, on a laptop CPU.

Trains a small eps-prediction network on scikit-learn's 8x8 handwritten digits (or a 2-D toy
set), estimates Analytic-DPM's score moment Gamma, and reports the held-out negative ELBO in
bits/dim of DDPM (beta and beta-tilde), DDIM, Analytic-DPM, Analytic-DDIM and the optimal
trajectory at K = 10, 25, 50, 100, 200 and N steps, plus the PF-ODE likelihood. On the digits
it then trains a class-conditional model with label dropout (classifier-free guidance sweep,
judged by a classifier; held-out bits/dim), inpaints the lower half of held-out digits
(`sd.Inpaint`, `sd.RePaint`) and trains a flow-matching model (`sd.RectifiedFlow`) to set beside
the diffusion model (bits/dim, samples at equal NFE). It writes `results.json`, `table.md`,
`nll_vs_steps.png`, `samples.png`, `training_loss.png`, `guidance.png`, `inpainting.png`,
`flow_vs_diffusion.png` and `report.md` to `runs/<name>/`. Run it from the repository root
(`make demo` does); `python -m examples.digits --help` lists the options.

An application, not part of the library: it uses only the public API (`import scoredyn as sd`)
and needs the `demo` extra (scikit-learn, matplotlib, tqdm).
"""

from .main import main as main
