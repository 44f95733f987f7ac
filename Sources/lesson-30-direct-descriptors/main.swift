print("lesson-30-direct-descriptors: not written yet")
