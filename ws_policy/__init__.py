"""WorldScape Policy: the video-depth-action Mixture-of-Transformers policy (seed 004).

Not built yet (issue 7); the package exists so the layout of DESIGN.md holds.
"""
