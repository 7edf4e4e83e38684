"""The one Definitions object (what workspace.yaml loads), built from the plan in params.yaml.

$ENS_ASSETS_PARAMS names another params file; ens_assets.defs.build builds Definitions for any plan.
"""

from ens_assets.defs.build import build_definitions

defs = build_definitions()
