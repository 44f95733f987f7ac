print("lesson-28-cq-overflow: not written yet")
