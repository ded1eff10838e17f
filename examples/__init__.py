"""Applications of scoredyn, built on its public API only (`import scoredyn as sd`).

Run them from the repository root:

- `python -m examples.digits` (or `make demo` / `make demo-quick`): the digits demo.
- `python -m examples.analytic_dpm_report`: Analytic-DPM's headline table on an exact oracle.
- `python -m examples.perturb_max_error_table`: quadrature error of the perturb-and-argmax
  probabilities.

They need the `demo` extra (`pip install -e ".[demo]"`: scikit-learn, matplotlib, tqdm, scipy).
"""
