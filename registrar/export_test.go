package registrar

import "time"

// SetAnswerTimeout shortens AnswerTimeout for a test and returns the function that restores it.
func SetAnswerTimeout(d time.Duration) (restore func()) {
	old := answerTimeoutFor
	answerTimeoutFor = d
	return func() { answerTimeoutFor = old }
}
