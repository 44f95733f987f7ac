// Not written yet.
import LabSupport
skip("lesson not written yet")
