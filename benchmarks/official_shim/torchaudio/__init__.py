"""A stand-in for torchaudio, this benchmark's own, NOT torchaudio: only what the official ``dasheng``
package (0.0.9) imports, ``torchaudio.transforms.MelSpectrogram`` and ``AmplitudeToDB``, written with
plain torch so that the official package runs beside the project's torch (a real torchaudio pins
another torch build). ``benchmarks/dasheng_speed.py`` checks the shimmed official forward against
the reference arrays the real package computed (../shared/reference/dasheng) before timing it.
"""

from . import transforms  # noqa: F401
