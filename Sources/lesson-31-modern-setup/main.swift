print("lesson-31-modern-setup: not written yet")
