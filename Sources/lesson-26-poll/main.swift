print("lesson-26-poll: not written yet")
