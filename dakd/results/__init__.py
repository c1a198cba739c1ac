"""Tables and figures from a preset's run folders, with the paper's numbers beside ours.

Modules: `dakd.results.paper` (the published numbers), `dakd.results.runs` (runs read back),
`dakd.results.tables` (the table builders), `dakd.results.figures` (one function per figure);
everything public is importable from `dakd.results` itself.

The paper's numbers live in ``dakd/paper_tables.json``, copied from He et al., DA-KD, ICML 2025
(PMLR 267:22379-22391), Tables 1-5, as published. One builder per table: `table1` (instruction
following), `table2` (SAMSum, GSM8K), `table3` (training cost), `table4` (DiffUp ablation),
`table5` (loss ablation), `lambda_sweep`, `tau_sweep`, `schedule_table`, and the figures `figure1`
(ROUGE-L against iterations) and `lambda_figure`. Each takes the table's runs ({run name:
``results.json`` contents}, e.g. `collect` restricted to ``presets.get_tables(preset)[table]``),
finds each run's row from its config, and shows ours, the paper's value and ours minus the paper's
side by side; an expected row without a run has run None and NaN numbers. A run that fits no row
(or two runs one row) is a ValueError, and so are runs decoded differently on one set
(`dakd.decoding.check_same_decoding`). Which paper pair is compared is in ``df.attrs["paper"]``.
"""

from ..compare import bootstrap_mean, paired_difference, per_prompt_values  # noqa: F401  (paired comparisons)
from .paper import *  # noqa: F401,F403
from .runs import *  # noqa: F401,F403
from .tables import *  # noqa: F401,F403
from .figures import *  # noqa: F401,F403
