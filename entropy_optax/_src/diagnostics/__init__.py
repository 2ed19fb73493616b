"""Flatness diagnostics: Hessian spectra, local entropy and local energy."""
