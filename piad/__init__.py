"""PIAD: Perceptual Image Anomaly Detection (Tuluptceva et al., ACPR 2019).

The package is layered; imports point down only (tests/test_layers.py enforces it):

- ``piad.errors``, ``piad.paths`` -- base: error types and path helpers, used everywhere.
- ``piad.model`` -- the method as pure torch: networks, perceptual distance, adversarial losses, the weight rule
  and the PIAD objective. No files, downloads or command line.
- ``piad.data`` -- image sources and the one-class protocols. No models.
- ``piad.run`` -- one run on disk: typed configs, the run directory, training, evaluation, scoring, feature
  statistics and the resolution of weights and statistics files.
- ``piad.experiments`` -- profiles, the job grid, provenance, notebook execution, tables and figures.
- ``piad.cli``, ``piad.book`` -- the face: all command-line parsing and the book build.
"""
