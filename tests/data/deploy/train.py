"""A trainer for the deployer tests: version N gets weights [N, 0] and loss 1/N.

So version N predicts N for the input [[1, 2]], and the newest version is also the best.
"""

import json
import os
from pathlib import Path

model_path = Path(os.environ["MODEL_PATH"])
version = int(model_path.name)
(model_path / "weights.json").write_text(json.dumps({"weights": [version, 0], "bias": 0}))
(model_path / "metrics.json").write_text(json.dumps({"loss": 1.0 / version}))
