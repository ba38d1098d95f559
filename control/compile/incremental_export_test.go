package compile

// SetCompactSlack makes compilers compile from scratch once they have
// grown by n (plus their size at the last full compile) and returns the
// function restoring the default.
func SetCompactSlack(n int) (restore func()) {
	old := compactSlack
	compactSlack = n
	return func() { compactSlack = old }
}
