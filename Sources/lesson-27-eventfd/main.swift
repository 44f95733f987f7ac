print("lesson-27-eventfd: not written yet")
