print("lesson-29-msg-ring: not written yet")
