print("lesson-25-cancellation: not written yet")
