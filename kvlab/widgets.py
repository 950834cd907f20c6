"""Interactive widgets for the chapters. They only wire sliders to kvlab's pure functions and plots.

Every widget has a plain drawing/update function (a function of the slider values that returns a Figure or text)
which the widget calls and which tests call directly, with ordinary and extreme values, without a browser.
ipywidgets is imported here only, never by ``import kvlab``.
"""

from __future__ import annotations

import ipywidgets as widgets

__all__: list[str] = []
