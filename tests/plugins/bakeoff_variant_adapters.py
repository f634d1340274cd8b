"""A test-only adapter whose ``library`` is a tiny pure-Python distribution, for versioned names.

``six-native`` is the native loop that records ``six`` as its library (the main environment has
six 1.17.0). ``six-native@1.16.0`` is then the same adapter run in an isolated environment with
``six==1.16.0`` — a seconds-long build — which exercises the version-matrix mechanism
(harness.registry variants, harness.envs.variant_spec) in CI without installing a training library.
Registered through the dist-info folder beside this file.
"""

from __future__ import annotations

from adapters.native import NativeAdapter


class SixNativeAdapter(NativeAdapter):
    name = "six-native"
    library = "six"
    # For the requirement tests only (never built): a version below 1.16 gets an extra pin.
    variant_requirements = {"<1.16": ("setuptools<81",)}
